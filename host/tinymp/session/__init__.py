"""The host personalisation session (docs/SESSION.md): the frame protocol, the serial link, the
simulated board, the dataset folder, the commands behind `tinymp push|collect|train|eval|report|
session|demo`, and the report."""
