"""What a user touches: the ``cove`` command (``cli``), the one-command demo, notebook widgets,
pictures (``viz``) and video files (``io``). Built on the engine; nothing in the engine imports it."""
