-- wrk script: POST /v1/orders with a JSON order (the body of CreateOrderRequest.order).
--   wrk -t1 -c32 -d8s -s benchmarks/post_order.lua http://127.0.0.1:8080/v1/orders
-- The body comes from $BENCH_POST_BODY when set (benchmarks/run.py sets it, so REST and
-- gRPC create the same order), else the order below. The summary line is printed by
-- wrk_report.lua, loaded from the folder of this script.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_POST_BODY") or
  '{"customerId":"alice","currencyCode":"EUR","note":"bench",' ..
  '"items":[{"sku":"BOOK-1","quantity":2,"unitPriceCents":"1250"},' ..
  '{"sku":"PEN-7","quantity":10,"unitPriceCents":"199"}]}'
wrk.headers["Content-Type"] = "application/json"

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "wrk_report.lua")
