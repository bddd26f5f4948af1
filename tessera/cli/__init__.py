"""The ``tessera`` command: remote verbs through tessera.client, local verbs import lazily."""
