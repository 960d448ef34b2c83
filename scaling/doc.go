// Package scaling is Aquifer's calibrated scaling model: a simulation that
// says how restores behave where these 2-core build machines cannot go.
//
// Host (Host, SimulateHost): c restores on one host of N cores. Every
// restore is a sequence of phases taken from one measured restore at
// concurrency 1 (Calibrate reads them out of an `aquifer bench` report):
// the guest's restore (CPU, one thread); the pre-install (the pager's CPU
// for the hot set, one thread, together with the hot bytes crossing the
// host's CXL link, bandwidth shared by every pre-install at that moment;
// at most PreinstallSlots at once: the daemon's CXL reader identities);
// then the replay in segments: vCPU work (up to VCPUs cores) and the
// pager's other work, each followed by the restore's waits (fault round
// trips), with the cold bytes crossing the NIC. CPU is processor-shared
// among every runnable thread; CXL link and NIC are shared by bandwidth.
// Waits are fitted so that the simulation of the calibration machine at
// concurrency 1 reproduces the measured end-to-end time; everything at
// c > 1 is then prediction, checked against the measured runs (Validate).
//
// Cluster (Cluster, PlanCluster): hosts × pods × memory nodes at a given
// restore rate: memory-node bandwidth and IOPS, pod CXL bandwidth and
// capacity, memory-node capacity, control-plane reads and writes per
// second, each as a utilisation with an M/M/1 queueing delay, the host
// side from SimulateHost under Poisson arrivals.
//
// The model owns no measurement (package bench does) and touches no tier.
package scaling
