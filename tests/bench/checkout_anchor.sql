-- pgbench script: the SQL of one checkout operation of meridian-loadgen's checkout-only run —
-- the add that fills the empty cart (region/cart_api.cc), then the checkout with an approved
-- card (region/order_api.cc) — statement for statement and transaction for transaction. Global tables live in schema g, the customer's shard in
-- schema s, in one database, so the anchor pays no cross-server round trips that Meridian pays:
-- it is an upper bound for the same work on the same PostgreSQL and settings.
\set u random(1, 100000)
\set sku random(1, 24)
\set k random(1, 1000000000)
BEGIN;
SELECT state, version FROM s.carts WHERE user_id = 'u' || :u FOR UPDATE;
INSERT INTO s.carts (user_id, state, residency, version) VALUES ('u' || :u, decode(repeat('ab', 30), 'hex'), 'us', 1) ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, version = s.carts.version + 1, updated_at = now();
INSERT INTO s.outbox (origin, kind, key, payload, residency) VALUES (1, 'cart', 'u' || :u, decode(repeat('ab', 11), 'hex'), 'us');
COMMIT;
BEGIN;
SELECT state FROM s.carts WHERE user_id = 'u' || :u;
SELECT order_id FROM s.orders WHERE user_id = 'u' || :u AND idempotency_key = 'k' || :k;
COMMIT;
BEGIN;
SELECT price_cents, currency FROM g.products WHERE sku = 'sku-' || lpad(:sku::text, 4, '0');
SELECT state FROM g.inventory WHERE sku = 'sku-' || lpad(:sku::text, 4, '0') FOR UPDATE;
INSERT INTO g.inventory (sku, state) VALUES ('sku-' || lpad(:sku::text, 4, '0'), decode(repeat('ab', 48), 'hex')) ON CONFLICT (sku) DO UPDATE SET state = EXCLUDED.state, updated_at = now();
INSERT INTO g.outbox (origin, kind, key, payload) VALUES (1, 'inventory', 'sku-' || :sku, decode(repeat('ab', 20), 'hex'));
INSERT INTO g.reservations (id, user_id, state, expires_at) VALUES ('o' || :k || '-' || :client_id, 'u' || :u, 'held', now() + interval '900 seconds') ON CONFLICT DO NOTHING;
INSERT INTO g.reservation_items (reservation_id, sku, units) VALUES ('o' || :k || '-' || :client_id, 'sku-' || :sku, 1) ON CONFLICT DO NOTHING;
COMMIT;
BEGIN;
SELECT order_id FROM s.orders WHERE user_id = 'u' || :u AND idempotency_key = 'k' || :k;
INSERT INTO s.orders (order_id, user_id, status, total_cents, currency, reservation_id, idempotency_key, owner_region, residency) VALUES ('o' || :k || '-' || :client_id, 'u' || :u, 'pending_payment', 1000, 'USD', 'o' || :k, NULL, 'local', 'us') ON CONFLICT DO NOTHING;
INSERT INTO s.order_items (order_id, sku, quantity, price_cents) VALUES ('o' || :k || '-' || :client_id, 'sku-' || :sku, 1, 1000) ON CONFLICT DO NOTHING;
INSERT INTO s.outbox (origin, kind, key, payload, residency) VALUES (1, 'order', 'o' || :k, decode(repeat('ab', 150), 'hex'), 'us');
INSERT INTO s.notifications (order_id, user_id, kind, payload) VALUES ('o' || :k, 'u' || :u, 'order_confirmation', repeat('x', 150));
SELECT state, version FROM s.carts WHERE user_id = 'u' || :u FOR UPDATE;
INSERT INTO s.carts (user_id, state, residency, version) VALUES ('u' || :u, decode(repeat('ab', 30), 'hex'), 'us', 1) ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, version = s.carts.version + 1, updated_at = now();
INSERT INTO s.outbox (origin, kind, key, payload, residency) VALUES (1, 'cart', 'u' || :u, decode(repeat('ab', 12), 'hex'), 'us');
COMMIT;
BEGIN;
SELECT status, total_cents, currency, residency FROM s.orders WHERE order_id = 'o' || :k || '-' || :client_id;
COMMIT;
BEGIN;
INSERT INTO g.sandbox_charges (charge_id, idempotency_key, order_id, amount_cents, currency, status) VALUES ('ch' || :k || '-' || :client_id, 'pay:o' || :k || '-' || :client_id, 'o' || :k, 1000, 'USD', 'captured') ON CONFLICT (idempotency_key) DO NOTHING;
COMMIT;
BEGIN;
UPDATE s.orders SET status = 'paid', payment_ref = 'ch' || :k, updated_at = now() WHERE order_id = 'o' || :k || '-' || :client_id AND status = 'pending_payment';
INSERT INTO s.outbox (origin, kind, key, payload, residency) VALUES (1, 'order', 'o' || :k, decode(repeat('ab', 60), 'hex'), 'us');
COMMIT;
BEGIN;
UPDATE g.reservations SET state = 'committed' WHERE id = 'o' || :k || '-' || :client_id AND state = 'held';
COMMIT;
BEGIN;
SELECT order_id, status, total_cents FROM s.orders WHERE order_id = 'o' || :k || '-' || :client_id;
SELECT sku, quantity, price_cents FROM s.order_items WHERE order_id = 'o' || :k || '-' || :client_id ORDER BY sku;
COMMIT;
