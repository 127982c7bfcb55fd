-- Argo CD health of a tollgate.dev ModelRoute or ProviderBudget (kstatus conventions).
-- Argo sets the global `obj` (the live object) and reads the returned table's `status` and
-- `message`.
--   Progressing: no status yet, no observedGeneration, an observedGeneration older than
--                metadata.generation (the controller has not acted on the last change), or no
--                Ready condition / Ready=Unknown.
--   Degraded:    Ready=False; the message is the condition's (it names the invalid field).
--   Healthy:     Ready=True; the message is the condition's, followed by the first True one of
--                Degraded (a route serving on fallbacks, or rejecting), Exhausted (a budget's
--                provider drained) and Warning (a budget threshold reached): the policy acting
--                as configured is healthy, and Argo shows why traffic moved.
local hs = {}
local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the tollgate controller to report status"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the tollgate controller to observe generation " .. tostring(generation) ..
    " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end
local ready = condition(status.conditions, "Ready")
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = (ready and ready.message) or "Waiting for the Ready condition"
  return hs
end
if ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.message or ready.reason or "Ready is False"
  return hs
end
hs.status = "Healthy"
hs.message = ready.message or ready.reason or "Ready"
for _, type in ipairs({ "Degraded", "Exhausted", "Warning" }) do
  local c = condition(status.conditions, type)
  if c ~= nil and c.status == "True" then
    hs.message = hs.message .. "; " .. type .. ": " .. (c.message or c.reason or "True")
    break
  end
end
return hs
