"""Who may call what, and how much: API keys with scopes (`keys`), the one table of the scope
each call needs (`scopes`), limits per client (`limits`), and the `gate` both front doors
pass every call through. Imports no transport."""
