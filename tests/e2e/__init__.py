"""Browser tests: whole journeys through the real pages in a headless Chromium."""
