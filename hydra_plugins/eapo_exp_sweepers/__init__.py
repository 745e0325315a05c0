"""Hydra plugins of eapo-exp. Hydra loads plugins only from the `hydra_plugins` namespace
package, so the sweeper subclass lives here rather than in eapo_exp."""
