"""MkDocs hook: render the Sphinx roles of the docstrings (``:func:`x```) as linked code.

The package's docstrings are Google style with reST cross-reference roles, which mkdocstrings'
Google parser leaves as text: ``:class:`~lightning_losses.weighting.Weighting``` would show up as
``:class:`` followed by ``~lightning_losses.weighting.Weighting`` in code. After mkdocstrings has
rendered a page, this turns each role into code (the last component only for ``~``, as Sphinx
does) inside an optional autorefs cross-reference: a link where the object is documented on the
site, plain code (and no warning) where it is not. A name without dots (``:func:`helper```) is
looked up among the objects on the same page.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):<code>(~?)([\w.]+)</code>")
ANCHOR = re.compile(r'id="([\w.]+)"')


def on_page_content(html, page, config, files):
    if ":<code>" not in html:
        return html
    anchors = set(ANCHOR.findall(html))

    def render(match):
        short, path = match.groups()
        code = f"<code>{path.rsplit('.', 1)[-1] if short else path}</code>"
        if "." not in path:  # relative to the module being documented
            found = [a for a in anchors if a.endswith(f".{path}")]
            if len(found) != 1:
                return code
            path = found[0]
        return f'<autoref identifier="{path}" optional>{code}</autoref>'

    return ROLE.sub(render, html)
