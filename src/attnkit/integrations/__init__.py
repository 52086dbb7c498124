"""attnkit as the attention of other libraries.

``attnkit.integrations.transformers.register()`` makes ``attn_implementation="attnkit"`` route every attention
call of a Hugging Face ``transformers`` model through ``attnkit.attention``. Each integration imports its
library only when it is used, so ``import attnkit`` never needs them.
"""

from . import transformers  # imports nothing from the library itself until register() is called

__all__ = ["transformers"]
