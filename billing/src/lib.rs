//! Tally's billing worker (to come, in the billing issue): month close, usage reports,
//! the pricing engine, plan-limit alerts and the exactly-once Stripe invoice sync. It will be
//! written against the ports in `tally-core`, so it runs on SQLite and DynamoDB alike.
