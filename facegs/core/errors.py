"""Errors for bad input that name what is wrong: which subject, which view, which field, which file."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input data. ``str(err)`` names the subject, the view, the field and the file when known.

    Attributes are kept separately so that reports (``facegs validate``, the Ray factory's failure
    records) can tabulate them.
    """

    def __init__(
        self,
        message: str,
        *,
        subject: str | None = None,
        view: str | None = None,
        field: str | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.subject = subject
        self.view = view
        self.field = field
        self.path = None if path is None else str(path)
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.subject is not None:
            where.append(f"subject '{self.subject}'")
        if self.view is not None:
            where.append(f"view '{self.view}'")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        text = (", ".join(where) + ": " if where else "") + self.message
        if self.path is not None:
            text += f" (file: {self.path})"
        return text

    def with_context(self, *, subject: str | None = None, view: str | None = None) -> InputError:
        """Return a copy with subject/view filled in where they were unknown."""
        return InputError(
            self.message,
            subject=self.subject if self.subject is not None else subject,
            view=self.view if self.view is not None else view,
            field=self.field,
            path=self.path,
        )

    def with_path_prefix(self, old: str, new: str) -> InputError:
        """A copy whose path and message name ``new`` where they named a path under ``old`` (a
        staged copy of the user's files mapped back to the user's URL)."""
        old = old.rstrip("/")
        path = self.path
        if path is not None and (path == old or path.startswith(old + "/")):
            path = new.rstrip("/") + path[len(old):]
        return InputError(self.message.replace(old, new.rstrip("/")), subject=self.subject, view=self.view,
                          field=self.field, path=path)

    def as_dict(self) -> dict[str, str | None]:
        return {
            "subject": self.subject,
            "view": self.view,
            "field": self.field,
            "path": self.path,
            "message": self.message,
        }


class FitError(RuntimeError):
    """A fit that finished but cannot be used (e.g. too few face parts to place the head frame).

    Deterministic for given inputs and config, so the factory does not retry it; it usually means
    poor initial labels or too few fit steps, not broken files.
    """

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        self.message, self.subject = message, subject
        super().__init__(f"subject '{subject}': {message}" if subject else message)
