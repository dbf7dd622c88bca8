"""An app whose tasks are written against Django's public Tasks API only."""
