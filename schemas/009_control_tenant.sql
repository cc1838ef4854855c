-- Containment per tenant: a control may name a tenant (empty: every tenant). A check made with a
-- tenant's token carries that tenant, and policy actions name their incident's tenant, so one
-- tenant's kill switch never stops another tenant's agents (analyzer/containment/control.py).
ALTER TABLE control_state ADD COLUMN IF NOT EXISTS tenant String DEFAULT '' AFTER key;
ALTER TABLE control_audit ADD COLUMN IF NOT EXISTS tenant String DEFAULT '' AFTER key;
CREATE OR REPLACE VIEW controls_in_force AS
SELECT * EXCEPT (version) FROM control_state FINAL WHERE mode != 'enabled';
