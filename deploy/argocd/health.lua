-- Argo CD health for k106.com/Ec2Instance. Install as
-- resource.customizations.health.k106.com_Ec2Instance in the argocd-cm ConfigMap
-- (see argocd/argocd-cm-patch.yaml).
local hs = {}
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      if condition.observedGeneration ~= nil and obj.metadata.generation ~= nil
          and condition.observedGeneration < obj.metadata.generation then
        hs.status = "Progressing"
        hs.message = "waiting for the operator to observe the latest spec"
        return hs
      end
      if condition.status == "True" then
        hs.status = "Healthy"
      elseif condition.reason == "Failed" then
        hs.status = "Degraded"
      else
        hs.status = "Progressing"
      end
      hs.message = condition.message
      return hs
    end
  end
end
hs.status = "Progressing"
hs.message = "waiting for the operator"
return hs
