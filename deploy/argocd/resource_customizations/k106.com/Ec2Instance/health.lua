-- Argo CD health for k106.com/Ec2Instance (the ec2-operator). Install as
-- resource.customizations.health.k106.com_Ec2Instance in the argocd-cm ConfigMap
-- (deploy/argocd/argocd-cm-patch.yaml), or upstream as
-- resource_customizations/k106.com/Ec2Instance/health.lua.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe the latest spec"
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    if generation ~= nil and condition.observedGeneration ~= nil and condition.observedGeneration < generation then
      hs.status = "Progressing"
      hs.message = "waiting for the operator to observe the latest spec"
    elseif condition.reason == "Paused" then
      hs.status = "Suspended"
      hs.message = condition.message
    elseif condition.status == "True" then
      hs.status = "Healthy"
      hs.message = condition.message
    elseif condition.reason == "Failed" or condition.reason == "Drifted" then
      hs.status = "Degraded"
      hs.message = condition.message
    else
      hs.status = "Progressing"
      hs.message = condition.message
    end
    return hs
  end
end
hs.status = "Progressing"
hs.message = "waiting for the operator"
return hs
