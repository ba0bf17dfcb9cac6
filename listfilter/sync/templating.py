"""Finding and rendering the Jinja2 templates (sync side and the admin pages).

The templates live in the repository's top-level ``templates/`` directory; a
non-editable install carries them as ``listfilter/templates``. The mail side
never renders a template: what it sends is rendered here at sync time and
carried in the snapshot.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def template_dir() -> Path:
    """The templates directory: ``listfilter/templates`` in an installed
    package, else ``templates/`` beside the package in a checkout (or an
    editable install). A candidate counts only if it holds our templates, so
    another project's ``site-packages/templates`` is never used."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "templates", package.parent / "templates"):
        if (candidate / "postfix" / "transport.j2").is_file():
            return candidate
    raise FileNotFoundError(f"listfilter templates not found near {package}")


@lru_cache(maxsize=None)
def environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
    )


def render(name: str, **context) -> str:
    return environment().get_template(name).render(**context)
