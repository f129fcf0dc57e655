// POST /functions/v1/two_tower_recommendations: the caller's next videos (the Python API's edge route, plus the
// filters of /v1/recommendations). Body: {"limit": 1-100, "exclude_liked": bool, "filters": {...}}; answer:
// {"recommendations": [...], "total_count", "algorithm", "model_version", "experiment_arm"} ("control" or "candidate"
// while an experiment runs, else null). What it served is logged to served_recommendations (a sample of users).

import { handle, json, readJson } from "../_shared/http.ts";
import { authenticate, getContext, parseRecommendationsRequest, recommend } from "../_shared/service.ts";

export const handler = handle(async (request) => {
  const body = await readJson(request);
  const ctx = getContext(["user"]);
  const user = (await authenticate(ctx, request)).requireUser();
  const { limit, excludeLiked, f } = parseRecommendationsRequest(body);
  const answer = await recommend(ctx, user, limit, excludeLiked, f);
  const headers: Record<string, string> = answer.fallback_reason ? { "X-Twotower-Fallback": "1" } : {};
  return json(answer, 200, headers);
});
