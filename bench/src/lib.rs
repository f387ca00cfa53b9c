//! Tally's benchmarks (to come): the fold in events per second per core, the write-cost
//! benchmark against the DynamoDB emulator, and the ingest throughput benchmark. Each prints
//! its figures beside a baseline measured in the same run; results go to `bench/RESULTS.md`.
