"""Small display filters shared by all templates."""

from django import template

register = template.Library()


@register.filter
def duration(ms) -> str:
    """Milliseconds as h:mm:ss or m:ss.s, the way archivists read time codes."""
    if ms in (None, ""):
        return "—"
    seconds = int(ms) / 1000
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{seconds - 60 * (hours * 60 + minutes):04.1f}"
