"""The demo app: tasks, the page that starts them, and the feed that shows them."""
