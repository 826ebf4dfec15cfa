"""Fine-tuning jobs: submission and cancel, the state machine, the timeline of events and
metric points, recovery of jobs whose worker died, artifacts and exports, and queries."""
