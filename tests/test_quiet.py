"""The command line drops the third-party messages a user cannot act on, and only those."""

from __future__ import annotations

import logging

import pytest

from fieldkit.quiet import UNACTIONABLE, _Drop, drop_unactionable_messages

MESSAGES = {
    "transformers.utils.import_utils": (
        "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
        " for backward compatibility."
    ),
    "diffusers.pipelines.pipeline_utils": "self.vae=None of type <class 'NoneType'> cannot be saved.",
}


@pytest.mark.parametrize("name", [name for name, _ in UNACTIONABLE])
def test_unactionable_messages_are_dropped_and_others_kept(name, caplog):
    drop_unactionable_messages()
    drop_unactionable_messages()  # idempotent: one filter per message
    logger = logging.getLogger(name)
    assert len([f for f in logger.filters if isinstance(f, _Drop)]) == 1  # the library may add its own
    with caplog.at_level(logging.WARNING, logger=name):
        logger.warning(MESSAGES[name])
        logger.warning("Some weights of the model checkpoint were not used")
        logger.warning("self.vae=AutoencoderKL() of type <class 'AutoencoderKL'> cannot be saved.")
    assert [r.getMessage() for r in caplog.records if r.name == name] == [
        "Some weights of the model checkpoint were not used",
        "self.vae=AutoencoderKL() of type <class 'AutoencoderKL'> cannot be saved.",
    ]
