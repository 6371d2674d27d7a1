"""The `instructloop` command: the one place that puts the web app (app/) and the trainer's worker
(trainer/) together. Neither of those imports this package."""
