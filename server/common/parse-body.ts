/** A request body checked against its zod schema; a body that fails gets the catalog's 400, named as OpenAI names it. */
import type { z } from "zod";
import { invalidRequest } from "./api-error.ts";

export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
  if (body === undefined || body === null || typeof body !== "object") {
    throw invalidRequest("The request body must be a JSON object.");
  }
  const parsed = schema.safeParse(body);
  if (!parsed.success) {
    const { message, param } = describeIssue(parsed.error);
    throw invalidRequest(message, param);
  }
  return parsed.data;
}

/** The first issue zod found, as OpenAI names it: a message and the offending parameter. */
export function describeIssue(error: z.ZodError): { message: string; param: string | null } {
  const issue = error.issues[0];
  const param = issue.path.length > 0 ? issue.path.join(".") : null;
  return { message: param ? `${param}: ${issue.message}` : issue.message, param };
}
