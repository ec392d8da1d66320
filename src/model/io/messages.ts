/** Chat messages, as chat templates expect them and as prompts from outside (the API, prompt files) give them. */
import { z } from "zod";

/** One chat message as chat templates expect it. */
export interface ChatMessage {
  role: string;
  content: string;
}

/** A chat message as prompts from outside take it (the API, prompt files): a role chat templates know. */
export const MessageSchema = z.object({ role: z.enum(["system", "user", "assistant", "tool"]), content: z.string() });
