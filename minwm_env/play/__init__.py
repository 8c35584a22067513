"""Interactive play in the browser: ``minwm-play`` serves a page that streams a world model
over a websocket and takes the keyboard (docs/play.md). One world per connection."""
