"""Feature explorer: static HTML dashboard and local web app over features.sqlite."""
