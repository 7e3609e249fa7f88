"""Browser fixtures (Playwright driving Debian's Chromium) — filled in by the browser tests."""
