"""Lightning callbacks that log what Lightning does not: throughput, memory, text samples."""
