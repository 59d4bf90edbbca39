"""Rules, the alert state machine, the durable outbox and the notifiers."""
