"""`python -m server_daemon` is `osfl-server`."""
from .cli import main

main()
