"""The paper's tables (`coincide reproduce table1|table2|table3`)."""
