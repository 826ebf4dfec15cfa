"""Webhooks: a team's endpoints (`endpoints`), the events recorded for them in the transaction
that made them (`events`, an outbox), and their signed delivery by a worker (`delivery`)."""
