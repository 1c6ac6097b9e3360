"""Which space a released set's images are in, and how they reach the bundle's space.

A wrong guess is a silently wrong accuracy, so the values decide only where they cannot be read
two ways. The space is given by the first rule that applies:

1. ``file.space`` = pixel, normalized or zca: the user's word.
2. What the file says of itself (``ExternalSet.declared_space``): safetensors metadata ``space``,
   where ``conditions`` naming zca (``ddbench export`` of a zca run) makes normalized mean
   whitened; the reference DC/DSA/DM result layout is normalized (that code never leaves
   normalised space and has no ZCA); MTT's ``images_zca_*.pt`` are pixels that may leave
   [0, 1] (MTT writes them through the ZCA inverse of its whitened set).
3. uint8 images and image folders: pixel.
4. The values, with lo and hi the set's minimum and maximum:

   - pixel when lo is within ``FILL`` (0.05) of 0 and hi within ``FILL`` of 1: the set fills
     [0, 1] as pixels do (black and white, or clipping); read as normalised, its darkest value
     would sit exactly at the dataset's mean and its brightest one std above it;
   - normalized when lo < -``SLACK`` or hi > 1 + ``SLACK`` (0.25): no pixel set lies that far
     outside [0, 1] (``file.space=pixel`` refuses it too). Under the zca condition such values
     can be normalised or whitened alike, so there the file is refused;
   - anything else is refused with one line asking for ``file.space``: a set inside
     [-0.25, 1.25] that does not fill [0, 1] is low-contrast pixels as much as normalised
     values that happen to lie there.

Conversion: pixel -> (x - mean) / std, or whitened under the zca condition; normalized -> as
is, or back to pixels and whitened under zca; zca -> as is. A set declared zca, or recognised
as made for ZCA-whitened data (metadata, ``images_zca_*``) without a ``file.space``, needs the
zca condition: without it, it is refused naming ``--conditions zca``.
"""

from __future__ import annotations

import torch

from ddbench.data.bundle import DataBundle

SPACES = ("auto", "pixel", "normalized", "zca")
#: pixels fill [0, 1]: their minimum within FILL of 0 and their maximum within FILL of 1
FILL = 0.05
#: no pixel set lies further than this outside [0, 1]
SLACK = 0.25


def to_space(x: torch.Tensor, ext, data: DataBundle, space: str, bad) -> tuple[torch.Tensor, str]:
    """``x`` (the images of ``ext``, an ``ExternalSet``) in ``data``'s space, and the reason shown
    at planning; ``bad(msg)`` makes the one-line error naming the file."""
    whitened = data.zca is not None
    explicit = space != "auto"
    space, used, bounded = _space(x, ext, space, whitened, bad)
    if ext.pixel_hint and space != "pixel":
        raise bad(f"the file holds pixels (image folder or uint8 images); space {space!r} "
                  "does not apply, use auto or pixel")
    if not whitened and (space == "zca" or (ext.zca_run and not explicit)):
        why = ext.zca_run or "file.space=zca"
        raise bad(f"the set is made for ZCA-whitened data ({why}); evaluate it under --conditions zca, or "
                  "give --set file.space=pixel or normalized to evaluate it as such")
    mean = torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1)
    if space == "zca" or (space == "normalized" and not whitened):
        return x.clone(), used
    if space == "normalized":
        return data.zca(x * std + mean), used
    lo, hi = float(x.min()), float(x.max())
    if bounded and (lo < -SLACK or hi > 1 + SLACK):
        raise bad(f"space 'pixel' needs values in [0, 1] (at most {SLACK:g} outside), found [{lo:.4g}, {hi:.4g}]")
    return (data.zca(x) if whitened else (x - mean) / std), used


def _space(x: torch.Tensor, ext, space: str, whitened: bool, bad) -> tuple[str, str, bool]:
    """(space, its reason, whether pixel values are held to [0, 1] +- SLACK)."""
    if space != "auto":
        return space, space, True
    if ext.declared_space:
        # MTT's ZCA inverse leaves [0, 1] as far as the whitened set did
        return ext.declared_space, f"{ext.declared_space} ({ext.declared_by})", ext.zca_run is None
    if ext.pixel_hint:
        return "pixel", f"pixel ({'image folder' if ext.format == 'folder' else 'uint8 images'})", True
    lo, hi = float(x.min()), float(x.max())
    if abs(lo) <= FILL and abs(hi - 1) <= FILL:
        return "pixel", "pixel (auto: values fill [0, 1])", True
    beyond = lo < -SLACK or hi > 1 + SLACK
    if beyond and not whitened:
        return "normalized", f"normalized (auto: values beyond [{-SLACK:g}, {1 + SLACK:g}], so not pixels)", True
    if beyond:
        why, choices = "are not pixels, but can be normalised or ZCA-whitened (the zca condition)", SPACES[2:]
    else:
        why = f"neither fill [0, 1] nor leave [{-SLACK:g}, {1 + SLACK:g}]"
        choices = SPACES[1:] if whitened else SPACES[1:3]
    raise bad(f"cannot tell the images' space: values in [{lo:.3g}, {hi:.3g}] {why}; "
              f"say which: {' or '.join(f'--set file.space={c}' for c in choices)}")
