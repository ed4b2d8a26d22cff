"""SVG charts drawn on the server: the finance pages need no JavaScript to show a picture.

`bar_chart()` draws vertical bars (sales by hour) or horizontal bars (by merchant, by channel) with
their values written beside them, so the chart still reads as a table for a screen reader (each bar
has a <title>) and when printed in black and white. Values are integers (fen or counts); labels go
through escaping, never into markup as they are.
"""
from markupsafe import escape

from sync_server.finance.report import yuan

_BAR = "#2f6f9f"
_TEXT = "#222"
_MAX_BARS = 60       # a chart with more bars than this is unreadable: the rest are summed as "others"


def _money(fen):
    return yuan(fen)


def hbar_chart(title, items, money=True, width=640):
    """Horizontal bars: items [(label, value)], largest first as given."""
    items = list(items)
    if len(items) > _MAX_BARS:
        items = items[:_MAX_BARS - 1] + [("…", sum(value for _label, value in items[_MAX_BARS - 1:]))]
    row_height, label_width, top = 22, 180, 28
    height = top + row_height * max(1, len(items)) + 8
    largest = max([value for _label, value in items] + [1])
    plot_width = width - label_width - 110
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="%d" height="%d" '
             'viewBox="0 0 %d %d" aria-label="%s">' % (width, height, width, height, escape(title)),
             '<text x="0" y="16" font-size="14" font-weight="bold" fill="%s">%s</text>' % (_TEXT, escape(title))]
    for index, (label, value) in enumerate(items):
        y = top + index * row_height
        bar = 0 if value <= 0 else max(1, int(plot_width * value / largest))
        shown = _money(value) if money else str(value)
        parts.append('<text x="%d" y="%d" font-size="12" text-anchor="end" fill="%s">%s</text>'
                     % (label_width - 6, y + 14, _TEXT, escape(label)))
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="%s"><title>%s: %s</title></rect>'
                     % (label_width, y + 3, bar, row_height - 6, _BAR, escape(label), shown))
        parts.append('<text x="%d" y="%d" font-size="12" fill="%s">%s</text>'
                     % (label_width + bar + 4, y + 14, _TEXT, shown))
    parts.append("</svg>")
    return "".join(parts)


def vbar_chart(title, items, money=True, width=720, height=240):
    """Vertical bars: items [(label, value)] in order (hours of the day)."""
    items = list(items)[:_MAX_BARS]
    top, bottom, left = 28, 36, 8
    plot_height = height - top - bottom
    slot = (width - left) / max(1, len(items))
    largest = max([value for _label, value in items] + [1])
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="%d" height="%d" '
             'viewBox="0 0 %d %d" aria-label="%s">' % (width, height, width, height, escape(title)),
             '<text x="0" y="16" font-size="14" font-weight="bold" fill="%s">%s</text>' % (_TEXT, escape(title))]
    for index, (label, value) in enumerate(items):
        bar = 0 if value <= 0 else max(1, int(plot_height * value / largest))
        x = left + index * slot
        shown = _money(value) if money else str(value)
        parts.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s: %s</title></rect>'
                     % (x + 2, top + plot_height - bar, max(1.0, slot - 4), bar, _BAR, escape(label), shown))
        parts.append('<text x="%.1f" y="%d" font-size="10" text-anchor="middle" fill="%s">%s</text>'
                     % (x + slot / 2, height - bottom + 14, _TEXT, escape(label)))
    parts.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s"/>'
                 % (left, top + plot_height, width, top + plot_height, _TEXT))
    parts.append("</svg>")
    return "".join(parts)


def day_charts(report, lang="zh"):
    """{name: svg} of the charts on a day's page."""
    en = lang == "en"
    from sync_server.finance.report import sales_by_hour
    hours = sales_by_hour(report)
    merchants = sorted(report["merchants"], key=lambda row: -row["net_fen"])
    return {
        "by_hour": vbar_chart("Sales by hour (yuan)" if en else "分时段交易额（元）",
                              [("%02d" % hour, fen) for hour, _count, fen in hours]),
        "by_merchant": hbar_chart("Net sales by merchant (yuan)" if en else "各商户净额（元）",
                                  [(row["name_en"] if en else row["name_zh"], row["net_fen"]) for row in merchants]),
        "channels": hbar_chart("Recharges by channel (yuan)" if en else "各渠道充值（元）",
                               [(row["name_en"] if en else row["name_zh"], row["total_fen"])
                                for row in report["channels"]]),
    }
