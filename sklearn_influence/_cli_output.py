"""What the command line prints: ASCII images, progress lines, labels and table rows.

All output is plain ASCII so that it prints on any terminal.
"""

import sys
import time

import numpy as np

#: grey levels from white (0) to black (1) for 8x8 digits
SHADES = " .:-=+*#%@"


def ascii_image(image):
    """Rows of characters for an image with values in [0, 1]."""
    levels = np.clip(np.rint(np.asarray(image) * (len(SHADES) - 1)), 0, len(SHADES) - 1)
    return ["".join(SHADES[int(v)] for v in row) for row in levels]


def print_image_row(panels, width=11, file=None):
    """Print images side by side; each panel is (title lines, image)."""
    n_titles = max(len(titles) for titles, _ in panels)
    for line in range(n_titles):
        print(
            "".join(
                f"{(titles + [''] * n_titles)[line]:<{width}}" for titles, _ in panels
            ).rstrip(),
            file=file,
        )
    rendered = [ascii_image(image) for _, image in panels]
    for row in range(len(rendered[0])):
        print("".join(f"{lines[row]:<{width}}" for lines in rendered).rstrip(), file=file)


class Progress:
    """One stderr line per long step, with the time the previous step took."""

    def __init__(self, quiet):
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message):
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            print(f"[{elapsed:6.1f} s] {message}", file=sys.stderr, flush=True)


def class_label(data, value):
    """The original label of an encoded class (CSV), the digit itself, or a target value."""
    if data.get("task") == "regression":
        return f"{float(value):.4g}"
    names = data.get("target_names")
    return str(names[value]) if names is not None else str(value)


def example_name(data, which, position):
    """How the user knows training (``which="train"``) or test example ``position``.

    A CSV file's 0-based data row (the header not counted) or its ``--id`` value; for the
    bundled digits the position in the split.
    """
    names = data.get(f"{which}_names")
    return str(position) if names is None else str(names[position])


def print_images(data, query, top, row, out):
    panels = [([f"test {query}", f"label {data.y_test[query]}"], data.images_test[query])]
    for sign, indices in (("+", top.helpful_indices[row]), ("-", top.harmful_indices[row])):
        panels += [
            ([f"{sign}#{index}", f"label {data.y_train[index]}"], data.images_train[index])
            for index in indices
        ]
    per_row = 7
    for start in range(0, len(panels), per_row):
        print(file=out)
        print_image_row(panels[start : start + per_row], file=out)


def table_rows(table):
    """Rows of :meth:`InfluenceDecomposition.decompose` as dicts (a DataFrame or a dict)."""
    if isinstance(table, dict):  # without pandas: column name -> list of values
        return [
            dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)
        ]
    return [{"term": term, **row} for term, row in table.to_dict("index").items()]


def new_axes(figsize):
    """Axes of a figure outside pyplot: no GUI backend, nothing left open."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").subplots()


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def figure_skipped(path, out):
    """Print the one-line note and return True when the figure cannot be drawn."""
    if have_matplotlib():
        return False
    print(
        f"\nFigure not saved to {path}: it needs matplotlib (pip install matplotlib, or "
        'pip install -e ".[plot]"); the table above has the same numbers.',
        file=out,
    )
    return True


# -- report ---------------------------------------------------------------------------------

#: file types of ``--report``: one HTML page, or one figure of every query
REPORT_TYPES = (".html", ".png", ".pdf", ".svg")

#: feature columns shown per training row in an HTML report
_REPORT_COLUMNS = 12


def _display(data, top, queries, rows):
    """A :class:`MostInfluentialDisplay` of the given rows of ``top`` (not yet plotted)."""
    from .metrics import MostInfluentialDisplay

    def pick(name):
        return top[name][rows]

    images = data.get("images_train") is not None
    labels_train = [class_label(data, value) for value in data.y_train]
    return MostInfluentialDisplay(
        pick("helpful_indices"),
        pick("helpful_values"),
        pick("harmful_indices"),
        pick("harmful_values"),
        query_images=data.images_test[queries[rows]] if images else None,
        train_images=data.images_train if images else None,
        query_labels=[class_label(data, data.y_test[q]) for q in queries[rows]],
        train_labels=labels_train,
        train_names=[example_name(data, "train", m) for m in range(len(data.y_train))],
        query_names=[example_name(data, "test", q) for q in queries[rows]],
    )


def _figure(data, top, queries, rows):
    k = top.helpful_indices.shape[1]
    images = data.get("images_train") is not None
    size = (1.3 * (1 + 2 * k), 1.6 * len(rows)) if images else (7, 0.45 * (2 * k + 2) * len(rows))
    display = _display(data, top, queries, rows).plot(ax=new_axes(size))
    return display.figure_


def _png_base64(figure):
    import base64
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_rows(data, top, row):
    """Table rows (HTML) of one query's helpful and harmful training examples."""
    import html

    raw = data.get("raw_train")
    columns = [] if raw is None else list(data.feature_names[:_REPORT_COLUMNS])
    header = "".join(f"<th>{html.escape(str(name))}</th>" for name in columns)
    lines = [
        f"<tr><th></th><th>{html.escape(data.name_header)}</th><th>label</th>"
        f"<th>influence</th>{header}</tr>"
    ]
    for kind in ("helpful", "harmful"):
        for rank, (index, value) in enumerate(
            zip(top[f"{kind}_indices"][row], top[f"{kind}_values"][row], strict=True)
        ):
            cells = "".join(
                f"<td>{v:.4g}</td>" for v in ([] if raw is None else raw[index][:_REPORT_COLUMNS])
            )
            lines.append(
                f'<tr class="{kind}"><td>{kind if rank == 0 else ""}</td>'
                f"<td>{html.escape(example_name(data, 'train', index))}</td>"
                f"<td>{html.escape(class_label(data, data.y_train[index]))}</td>"
                f"<td>{value:+.3e}</td>{cells}</tr>"
            )
    return "\n".join(lines)


def write_report(path, data, top, queries, predicted, summary):
    """Write ``--report``: an HTML page (figure and table per query) or one figure file.

    ``top`` is :meth:`InfluenceFunction.most_influential` of the test examples ``queries``,
    ``predicted`` the model's predictions for them and ``summary`` the text printed above.
    """
    import html
    import os

    if os.path.splitext(path)[1].lower() != ".html":
        _figure(data, top, queries, list(range(len(queries)))).savefig(path)
        return
    sections = []
    for row, query in enumerate(queries):
        title = (
            f"Test {data.unit[:-1]} {example_name(data, 'test', query)}: label "
            f"{class_label(data, data.y_test[query])}, predicted "
            f"{class_label(data, predicted[row])}"
        )
        figure = _png_base64(_figure(data, top, queries, [row]))
        sections.append(
            f"<h2>{html.escape(title)}</h2>\n"
            f'<img alt="most helpful and harmful training {data.unit}" '
            f'src="data:image/png;base64,{figure}">\n'
            f"<table>\n{_html_rows(data, top, row)}\n</table>"
        )
    names = {"index": "position in the training split", "row": "0-based data row of the file"}
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>sklearn-influence report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:auto}}
td,th{{padding:0 .6em;text-align:right}} tr.helpful td{{color:#1a7f37}}
tr.harmful td{{color:#b42318}} pre{{white-space:pre-wrap}}</style></head><body>
<h1>Most helpful and most harmful training {html.escape(data.unit)}</h1>
<p>Influence of a training example on a test example: the predicted rise of the test
example's loss if that training example were removed and the model refit. Positive (green):
it helps the test example; negative (red): it harms it. Column
&ldquo;{html.escape(data.name_header)}&rdquo;:
{html.escape(names.get(data.name_header, "the file's id column"))}.</p>
<pre>{html.escape(summary)}</pre>
{"".join(sections)}
</body></html>
"""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
