"""The ``hftl`` sub-commands, one module per family; :mod:`hftl.cli` builds the parser and dispatches.

Each module has ``add_parsers(sub)``, which registers its sub-commands with their handler
(``set_defaults(handler=...)``), and the ``cmd_*`` handlers themselves. Handlers import what they run
inside the function, so ``hftl --help`` and ``hftl ls`` start without loading torch.

- :mod:`hftl.commands.recipes`: ``ls``, ``validate``, ``cp`` (``run`` lives in :mod:`hftl.cli`).
- :mod:`hftl.commands.models`: ``eval``, ``predict``: a saved model, local or on the Hub.
- :mod:`hftl.commands.hub`: ``card``, ``push``, ``export``.
- :mod:`hftl.commands.tools`: ``assess``, ``data make-spoken-digits``.
"""
