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
    """The original label of an encoded class (CSV) or the digit itself."""
    names = data.get("target_names")
    return str(names[value]) if names is not None else str(value)


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
