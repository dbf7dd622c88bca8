"""A small Django site that uses django-qtasks from its views, as a project would."""
