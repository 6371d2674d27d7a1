"""instructloop web app and data layer."""
