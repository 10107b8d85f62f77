"""Progress bars: widgets in a notebook that can show them, plain text everywhere else.

``tqdm.auto`` picks notebook widgets whenever it runs in a Jupyter kernel and warns
("IProgress not found") when ``ipywidgets`` is missing; here the widget bar is used only
where it can be drawn, so a notebook never prints the warning or a wall of text bars.
"""

from __future__ import annotations

import importlib.util

from tqdm.std import tqdm as _text_tqdm


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.notebook import tqdm
else:
    tqdm = _text_tqdm

__all__ = ["tqdm"]
