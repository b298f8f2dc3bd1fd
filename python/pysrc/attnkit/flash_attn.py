"""``from attnkit.flash_attn import flash_attn_func``: the same names as
``attnkit.flash_attn_interface`` (FlashAttention's package exports them at its top level)."""

from .flash_attn_interface import *  # noqa: F401,F403
from .flash_attn_interface import __all__  # noqa: F401
