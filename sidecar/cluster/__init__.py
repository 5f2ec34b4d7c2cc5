"""Several daemons acting as one: partitions and their owners (`partitions`), membership and
fenced leases (`coordinator`), provider budgets shared by every member (`budget`)."""
