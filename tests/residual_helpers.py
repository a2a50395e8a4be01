"""Checks shared by the residual-stream tests of both MusicGen backends."""

import pytest

from bridge import residual_steering
from bridge.directions import load_directions
from bridge.generate import generate
from emosae_jax import directions_format as fmt


def assert_site_refused(backend, vectors, per, settings, tmp_path, prompts):
  """A model with 2 decoder layers, 32 wide, refuses an export at layer 5
  and one 16 wide (both SiteError, a UserError: one line, exit 2)."""
  fmt.write(tmp_path / "l5", vectors, dict(per, site=fmt.decoder_layer(5)))
  with pytest.raises(residual_steering.SiteError,
                     match=r"decoder layer 5 .* 2 decoder layers"):
    generate(backend, prompts, load_directions(tmp_path / "l5"), 1.0,
             settings)
  fmt.write(tmp_path / "w16", vectors[:, :16],
            dict(per, site=fmt.decoder_layer(1)))
  with pytest.raises(residual_steering.SiteError, match="32 wide"):
    generate(backend, prompts, load_directions(tmp_path / "w16"), 1.0,
             settings)
