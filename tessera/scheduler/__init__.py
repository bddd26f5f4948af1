"""The pure scheduling core: snapshot -> decisions (+ reasons). Imports only tessera.api."""
