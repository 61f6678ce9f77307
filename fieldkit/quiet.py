"""Third-party log messages a fieldkit user cannot act on, dropped from the command line's output.

transformers warns on every SD3 / Z-Image command that an image processor falls back to its PIL version
when torchvision is absent (fieldkit needs no torchvision), and diffusers warns that a pipeline component
deliberately left out (``None``) cannot be saved. Everything else those libraries log still shows.
"""

from __future__ import annotations

import logging
import re

# (logger, message pattern) of each message dropped; a logger's filter sees the records it emits itself.
UNACTIONABLE: tuple[tuple[str, str], ...] = (
    ("transformers.utils.import_utils", r"requires torchvision \(not installed\); falling back to"),
    ("diffusers.pipelines.pipeline_utils", r"=None of type <class 'NoneType'> cannot be saved"),
)


class _Drop(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def drop_unactionable_messages() -> None:
    """Attach one filter per entry of :data:`UNACTIONABLE` to its logger (once; no library is imported)."""
    for name, pattern in UNACTIONABLE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_Drop(pattern))
