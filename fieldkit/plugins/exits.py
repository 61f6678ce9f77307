"""A ``sys.exit`` in plugin code is an error that names the plugin object, never a quiet exit.

Code that calls into plugins (fields, data buckets, metrics, methods, routers) outside the places that
already contain every exception (loading, registration, factories) runs the call inside
:func:`exit_is_error`: a ``SystemExit`` (whatever its code, 0 included) becomes a
:class:`~fieldkit.errors.PluginError`, so the command prints one message and exits non-zero instead of
stopping silently, often with status 0, before its results or report are written. KeyboardInterrupt is
left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fieldkit.errors import PluginError

#: What a plugin should do instead of exiting.
EXIT_HINT = "a field, data bucket, metric, method or router must raise an exception, not exit the process"


@contextlib.contextmanager
def exit_is_error(what: str, during: str, hint: str = EXIT_HINT) -> Iterator[None]:
    """Run the block; a ``SystemExit`` raised in it is a PluginError ``WHAT: sys.exit(CODE) was called
    DURING, at FILE:LINE (in FUNCTION); ...``."""
    try:
        yield
    except SystemExit as exc:
        raise PluginError(
            f"{what}: sys.exit({exc.code!r}) was called {during}, at {raised_at(exc)}; fieldkit treats it "
            "as an error",
            hint=hint,
        ) from exc


def raised_at(exc: BaseException) -> str:
    """``file:line (in function)`` of the innermost frame of ``exc``'s traceback that called ``sys.exit``:
    functions named ``exit`` at the inner end, libraries' replacements of ``sys.exit`` that call the one
    before them (wandb installs one), are passed over."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    while len(frames) > 1 and frames[-1].tb_frame.f_code.co_name == "exit":
        frames.pop()
    if not frames:
        return "<unknown>"
    code = frames[-1].tb_frame.f_code
    return f"{code.co_filename}:{frames[-1].tb_lineno} (in {code.co_name})"
