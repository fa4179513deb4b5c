"""The project's own errors: what a user can cause and fix (bad params, files, data, models).

A pipeline stage (:mod:`pneumocxr.stage`) and the command line (:mod:`pneumocxr.cli`) report a
:class:`PneumocxrError` as one line naming the file or key and the fix, without a traceback.
Anything else -- a shape mismatch inside torch, an out-of-memory, a bug -- is not caught that
way: it keeps its full traceback in the rule's log.

Each class also derives from the built-in error it refines, so ``except ValueError`` and
``pytest.raises(FileNotFoundError)`` keep working.
"""

from __future__ import annotations


class PneumocxrError(Exception):
    """An error in the user's input that the message explains how to fix."""


class InputError(PneumocxrError, ValueError):
    """A bad value: a param, an argument, a file's content or a model that does not fit."""


class MissingInputError(PneumocxrError, FileNotFoundError):
    """A file or folder the step needs is not there."""


class RunError(PneumocxrError, RuntimeError):
    """A run that cannot go on for a reason the user can act on (diverged, no GPU, stale cache)."""
