-- wrk script for bench/signal-load/run: half the requests POST an offer-sized body (~400
-- bytes) to one of 1000 rooms, the other half GET a mailbox (no long-poll), like peers
-- that post their offer and read their peer's.
local n = 0
local data = string.rep("x", 400)

request = function()
  n = n + 1
  local room = "bench-" .. (math.floor(n / 2) % 1000)
  if n % 2 == 0 then
    local body = '{"room":"' .. room .. '","role":"client","data":"' .. data .. '"}'
    return wrk.format("POST", "/", { ["Content-Type"] = "application/json" }, body)
  end
  return wrk.format("GET", "/?room=" .. room .. "&role=client")
end
