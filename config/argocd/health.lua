-- Argo CD health check for every vault.certus.io kind (certus-vault-operator).
--
-- The operator reports kstatus-style conditions: status.conditions holds a `Ready`
-- condition, and status.observedGeneration says which metadata.generation the status
-- was computed for.
--   Ready=True and the status is for the current generation -> Healthy
--   no status yet, status for an older generation, Ready=Unknown,
--   Ready=False with reason Progressing or WaitingForDependency  -> Progressing
--   Ready=False for any other reason                             -> Degraded
-- The same script is installed under resource.customizations.health.vault.certus.io_<Kind>
-- for each kind (see config/argocd/argocd-cm.yaml and docs/argocd-flux.md).
local hs = {}

local function waiting(message)
  hs.status = "Progressing"
  hs.message = message
  return hs
end

if obj.status == nil or obj.status.conditions == nil then
  return waiting("Waiting for the operator to report status")
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  return waiting("Waiting for the operator to observe generation " .. tostring(generation))
end

local ready = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  end
end

if ready == nil then
  return waiting("Waiting for the Ready condition")
end

if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  return waiting("Waiting for the operator to observe generation " .. tostring(generation))
end

local reason = ready.reason or ""
local message = ready.message or ""
if message == "" then
  message = reason
elseif reason ~= "" then
  message = reason .. ": " .. message
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message
  return hs
end

if ready.status == "False" and reason ~= "Progressing" and reason ~= "WaitingForDependency" then
  hs.status = "Degraded"
  hs.message = message
  return hs
end

return waiting(message)
