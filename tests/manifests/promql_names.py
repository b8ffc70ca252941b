"""Metric names used in PromQL expressions, and metric names offered by a scrape.

Not a PromQL parser: promtool checks the syntax. This only has to find every
metric name an expression selects, which is every identifier that is not a
function, aggregation, keyword, label name or Grafana variable.
"""

import re

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atan2", "inf", "nan",
}
# A grouping or matching modifier followed by its label list.
LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.I)
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\]]*\]")
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
NUMBER = re.compile(r"(?<![\w:])(0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?[a-z]*)")
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Grafana's label_values(metric_or_selector, label): only the first argument selects metrics.
LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$", re.S)


def metric_names(expr):
    """Every metric name the expression reads, as a set of strings."""
    label_values = LABEL_VALUES.match(expr)
    if label_values:
        expr = label_values.group(1)
    text = STRING.sub(" ", expr)
    text = GRAFANA_VARIABLE.sub(" ", text)
    # Matchers may hold a metric name: {__name__="x"}. Rare; flag it instead of guessing.
    if "__name__" in text:
        raise ValueError(f"__name__ matchers are not supported by this checker: {expr}")
    text = LABEL_MATCHERS.sub(" ", text)
    text = RANGE.sub(" ", text)
    text = LABEL_LIST.sub(" ", text)
    text = NUMBER.sub(" ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if word.lower() in KEYWORDS or word in AGGREGATIONS:
            continue
        if rest.startswith("("):  # a function call
            continue
        names.add(word)
    return names


class Scrape:
    """Families and sample names from a Prometheus or OpenMetrics text exposition."""

    def __init__(self, text):
        self.types = {}  # family name -> type, from "# TYPE" lines
        self.samples = set()  # names of sample lines
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) >= 4:
                    self.types[parts[2]] = parts[3]
            elif line and not line.startswith("#"):
                name = IDENTIFIER.match(line)
                if name:
                    self.samples.add(name.group(0))

    def offers(self, name):
        """Whether a query for `name` can return data from this exposition.

        A family with no label set yet (an idle agent has no active faults)
        has a TYPE line and no samples, so family types count too.
        """
        if name in self.samples or self.types.get(name) in ("gauge", "untyped", "unknown"):
            return True
        # Text format 0.0.4 declares a counter as "X_total"; OpenMetrics declares
        # "X" and exposes "X_total" (handled by the suffix table below).
        if self.types.get(name) == "counter" and name.endswith("_total"):
            return True
        for suffix, family_types in (
            ("_total", ("counter",)),
            ("_created", ("counter", "histogram", "summary")),
            ("_bucket", ("histogram",)),
            ("_sum", ("histogram", "summary")),
            ("_count", ("histogram", "summary")),
        ):
            if name.endswith(suffix) and self.types.get(name[: -len(suffix)]) in family_types:
                return True
        return False


# Prometheus' own series, present without being in any target's exposition.
BUILTIN_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def missing_names(used, scrape):
    """The names in `used` that neither the scrape nor Prometheus itself provides."""
    return sorted(n for n in used if n not in BUILTIN_SERIES and not scrape.offers(n))
